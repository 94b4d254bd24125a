"""Models and tokenizers: loading, the embedded tiny model, teacher weights, sequence scoring."""
