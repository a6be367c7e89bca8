"""Experiments above the submission layer: they train several runs, score them through ``make_submission`` and
write comparison tables (the C-EXPR-NET ablation, the multi-task comparison, fusion tuning, the demo)."""
