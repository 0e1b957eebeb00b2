"""`fewstep quickstart`: the whole pipeline on the embedded default (`run`), and its settings (`config`)."""
