"""The ticket classifier: training, ONNX export, calibration and inference."""

import os

# onnxruntime 1.32 sends usage telemetry to Microsoft from the first session it creates,
# and reads this variable only when the library loads. deskroute must not send anything
# anywhere unasked, so it is set before any module of this package imports onnxruntime.
# A value set by the operator is kept.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
