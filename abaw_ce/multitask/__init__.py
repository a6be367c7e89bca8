"""The multi-task track: FaceBehaviorNet (Kollias et al., "Face Behavior à la carte") with its coupling losses
and zero-shot compounds, meta multi-task learning (Li et al.) and the selective joint multi-task loss (Pons &
Masip)."""

# The metadata file that marks a multi-task export (read by inference without importing the training code).
EXPORT_META_FILE = "multitask.json"
