"""Models: the shared timm ViT encoder, the MAE around it, encoder exports and imports, timm classifiers and
their exports, the C-EXPR-NET and multi-task networks, and the registry that loads any export by its kind.

Each model module registers its export kind when imported; importing them here means the registry knows
every kind whichever module of the package is imported first; ``plain_cnn`` registers its timm model the same
way, so an export of it loads in any process that imports the kit's models."""
from abaw_ce.models import cexprnet, export, multitask, plain_cnn, timm_classifier

__all__ = ["cexprnet", "export", "multitask", "plain_cnn", "timm_classifier"]
