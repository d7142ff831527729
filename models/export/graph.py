"""The exported classifier graph's names: torch-free, so the serving side (the classifier service, the
Triton backend, the serving folder reader) shares them with the exporter without loading torch."""

INPUT_NAME = "image"
OUTPUT_NAME = "probability"
#: The model's name in a Triton model repository (and the serving folder's triton/<name>/).
TRITON_NAME = "lesion_classifier"
