"""The names that several layers share: registered models and their aliases (one copy of each)."""

CNN_MODEL_NAME = "digits-cnn"
BASELINE_MODEL_NAME = "digits-baseline"
CHAMPION = "champion"
CHALLENGER = "challenger"
# What `digits predict`, `digits evaluate`, the app and the benchmarks load unless told otherwise.
CHAMPION_URI = f"models:/{CNN_MODEL_NAME}@{CHAMPION}"
