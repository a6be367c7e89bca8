"""The C-EXPR-NET track (Kollias, CVPR 2023): AU semantic encoding, cross-modality attention, KL expressions,
distribution matching."""

# The metadata file that marks a C-EXPR-NET export (read by inference without importing the training code).
EXPORT_META_FILE = "cexprnet.json"
