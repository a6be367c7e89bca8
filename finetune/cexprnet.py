"""C-EXPR-NET track: ``accelerate launch finetune/cexprnet.py data.datasets=[...] [model.backbone=timm:resnet50]``."""
import sys

from abaw_ce.cli.cexprnet import main_cexprnet

if __name__ == "__main__":
    sys.exit(main_cexprnet())
