"""Models: the shared timm ViT encoder, the MAE around it, encoder exports and imports."""
