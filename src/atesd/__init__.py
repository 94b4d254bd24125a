"""atesd: on-policy self-distillation with adaptive teacher exposure.

One model plays two roles. The *student* answers a problem from the question alone; the *teacher* is the
same model shown part of a reference solution (its exposure alpha) and scores every token of the student's
answer. The student learns from the teacher's per-token distributions.
"""

__version__ = "0.1.0"
