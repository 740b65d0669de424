"""The names that several layers share: registered models and their aliases (one copy of each)."""

CNN_MODEL_NAME = "digits-cnn"
# The same network through ONNX Runtime, registered as "<name>-onnx" beside each version of a CNN "<name>".
ONNX_SUFFIX = "-onnx"
ONNX_MODEL_NAME = CNN_MODEL_NAME + ONNX_SUFFIX
BASELINE_MODEL_NAME = "digits-baseline"
CHAMPION = "champion"
CHALLENGER = "challenger"
# What `digits predict`, `digits evaluate`, the app and the benchmarks load unless told otherwise.
CHAMPION_URI = f"models:/{CNN_MODEL_NAME}@{CHAMPION}"
