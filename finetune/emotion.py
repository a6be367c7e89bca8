"""Stage 3, 5-fold basic emotions: ``accelerate launch finetune/emotion.py [--folds 0,2] [--ablation DIR] ...``."""
import sys

from abaw_ce.cli.emotion import main_emotion

if __name__ == "__main__":
    sys.exit(main_emotion())
