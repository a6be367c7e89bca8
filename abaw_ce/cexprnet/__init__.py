"""The C-EXPR-NET track (Kollias, CVPR 2023): AU semantic encoding, cross-modality attention, KL expressions,
distribution matching."""
