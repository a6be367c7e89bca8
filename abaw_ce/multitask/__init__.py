"""The multi-task track: FaceBehaviorNet (Kollias et al., "Face Behavior à la carte") with its coupling losses
and zero-shot compounds, meta multi-task learning (Li et al.) and the selective joint multi-task loss (Pons &
Masip). The networks and their exports are ``abaw_ce.models.multitask``'s; the track holds the losses and
the training stage."""
