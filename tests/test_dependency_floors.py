"""The dependency floors of pyproject.toml are true: each is at least the first release of what atesd uses of
that package (the table below: the API, where atesd uses it, and the release that introduced it), and the
installed versions satisfy the declared ranges. `.ci/floors` installs every floor exactly and runs the tests that
reach these APIs; this file keeps the table and the declarations in step.

Adding a dependency, or using a newer API of one, means a row here (and maybe a higher floor)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# (distribution, what atesd uses and where, the first release that has it). "needs" rows are another floor's
# own requirement: a lower floor could not be installed beside it; "kept" rows are a floor above every API
# need, left where it was because .ci/floors installs and tests it there.
NEEDS = [
    ("torch", ("fully_shard, FSDPModule, CPUOffloadPolicy from torch.distributed.fsdp, their public path "
              "(train/sharding.py; pytorch PR 141868)"), "2.6"),
    ("torch", ("FSDPModule.set_reshard_after_forward and fully_shard(reshard_after_forward=None), the root "
              "keeping its parameters (train/sharding.py; absent from the 2.7.1 wheel, present in 2.8.0)"), "2.8"),
    ("transformers", "DynamicCache(config=...) (rollout/decode.py; 4.55.4 has no config argument)", "4.56"),
    ("transformers", "from_pretrained(dtype=...) (models/loading.py; before 4.56: torch_dtype)", "4.56"),
    ("transformers", ("get_decoder() of a causal LM returns its decoder (models/sequences.py, train/sharding.py; "
                      "4.56.0 and 4.56.1 return None for Qwen3 and Llama)"), "4.56.2"),
    ("transformers", ("StaticCache keeps its own write position: up to 5.3 it counts the non-zero keys of batch row "
                      "0, so once the decode loop (rollout/decode.py, static cache and drop_finished by default) "
                      "puts a left-padded row first it writes to the wrong slot and samples other tokens than "
                      "generate (tests/test_decode.py: 5.3.0 fails, 5.4.0 passes)"), "5.4"),
    ("transformers", ("a GGUF file's tokenizer keeps its end and padding tokens (models/loading.py, "
                      "model.name_or_path: x.gguf): up to 5.17.0 SmolLM2's GGUF converts with eos <|im_start|> and "
                      "no pad token, from 5.18.0 with <|im_end|> for both (tests/test_decode.py, the SmolLM2 "
                      "test)"), "5.18"),
    ("accelerate", ("FullyShardedDataParallelPlugin.fsdp_version and .reshard_after_forward, FSDP2 "
                   "(train/sharding.py)"), "1.6"),
    ("accelerate", "the trackio tracker, run.report_to: trackio (train/metrics.py)", "1.9"),
    ("datasets", ("load_dataset, load_from_disk, DatasetDict (data/loaders.py): nothing newer; 3.0 is the "
                 "floor .ci/floors installs"), "3.0"),
    ("safetensors", ("save_file/load_file of torch.uint32 tensors, the numpy RNG state of a checkpoint "
                     "(train/checkpoint.py; 0.5.3's dtype table has U32 commented out, and there is no 0.6.0)"),
     "0.6.1"),
    ("safetensors", "needs: transformers 5.18 requires safetensors>=0.8.0", "0.8"),
    ("math-verify", ("parse(raise_on_error=) and verify(raise_on_error=) (eval/grading.py; 0.7.0 has "
                    "neither)"), "0.8"),
    ("matplotlib", "Axes.set_xticks(ticks, labels) (analysis plots)", "3.5"),
    ("matplotlib", "kept: the floor .ci/floors installs and tests", "3.8"),
    ("tqdm", "needs: datasets 3.0 requires tqdm>=4.66.3 (atesd's own use, tqdm.auto, is far older)", "4.66.3"),
    ("pydantic", ("AfterValidator, model_validator, ConfigDict(extra=, validate_assignment=, allow_inf_nan=) "
                 "(config/): pydantic 2"), "2.0"),
    ("pydantic", "kept: the floor .ci/floors installs and tests, config error messages included", "2.7"),
    ("pyyaml", "safe_dump(sort_keys=False) (config.save_config, atesd config show)", "5.1"),
    ("pyyaml", "kept: the floor .ci/floors installs and tests", "6.0"),
    ("scipy", "curve_fit(bounds=, jac=) (exposure/seele.py), stats.t (analysis/paired.py)", "0.18"),
    ("scipy", "kept: the floor .ci/floors installs and tests", "1.11"),
    ("peft", ("LoraConfig, get_peft_model, PeftModel.from_pretrained(...).merge_and_unload, "
             "LoraLayer.get_delta_weight (models/): nothing newer; 0.15 is the floor .ci/floors installs "
             "beside transformers 5.18"), "0.15"),
    ("gguf", "needs: transformers reads GGUF files only with gguf>=0.10 (its GGUF_MIN_VERSION)", "0.10"),
    ("gguf", ("import gguf works: 0.10.0 imports sentencepiece without requiring it, 0.11.0 requires it "
              "(models/loading.py converts GGUF files through transformers, which imports gguf)"), "0.11"),
    ("numpy", "np.random.default_rng, np.random.SeedSequence", "1.17"),
    ("numpy", ("needs: scipy 1.11 and matplotlib 3.8 are built for numpy 1.x (scipy 1.11: numpy<1.28); 1.26 is "
              "the floor .ci/floors installs"), "1.26"),
    ("tokenizers", ("needs: transformers 5.18 requires tokenizers>=0.23.1 (atesd's own use: Tokenizer, models, "
                    "pre_tokenizers, decoders, normalizers in models/tiny.py)"), "0.23.1"),
    ("huggingface-hub", ("needs: transformers 5.18 requires huggingface-hub>=1.31 (atesd's own use: "
                         "huggingface_hub.errors.HFValidationError in models/loading.py)"), "1.31"),
]


def declared() -> dict[str, Requirement]:
    """pyproject's dependencies by canonical name."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {canonicalize_name(req.name): req for req in map(Requirement, dependencies)}


def floor(requirement: Requirement) -> Version:
    """The lower bound of `requirement` (every dependency has exactly one, ``>=``)."""
    lows = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    assert len(lows) == 1, f"{requirement}: give one floor, as >="
    return lows[0]


def test_every_dependency_has_a_floor_and_a_reason():
    names = declared()
    reasons = {canonicalize_name(name) for name, _, _ in NEEDS}
    assert reasons == set(names), {"without a row": set(names) - reasons, "not declared": reasons - set(names)}
    for requirement in names.values():
        floor(requirement)


@pytest.mark.parametrize("name,needs,version", NEEDS, ids=[f"{name}>={version}" for name, _, version in NEEDS])
def test_each_floor_is_at_least_what_atesd_needs(name, needs, version):
    requirement = declared()[canonicalize_name(name)]
    assert floor(requirement) >= Version(version), f"{requirement}: {needs} needs {name}>={version}"


def test_each_floor_is_exactly_the_highest_need():
    """No floor above what the table gives a reason for: a raised floor names its reason here."""
    highest: dict[str, Version] = {}
    for name, _, version in NEEDS:
        highest[canonicalize_name(name)] = max(highest.get(canonicalize_name(name), Version("0")), Version(version))
    above = {name: str(req) for name, req in declared().items() if floor(req) != highest[name]}
    assert not above, f"floors without a row that needs them: {above}"


@pytest.mark.parametrize("name", sorted(declared()))
def test_the_installed_version_is_in_the_declared_range(name):
    requirement = declared()[name]
    installed = importlib.metadata.version(requirement.name)
    assert requirement.specifier.contains(installed, prereleases=True), f"{name} {installed} is outside {requirement}"
