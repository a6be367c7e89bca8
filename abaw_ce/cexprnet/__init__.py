"""The C-EXPR-NET track (Kollias, CVPR 2023): AU semantic encoding, cross-modality attention, KL expressions,
distribution matching. The network and its exports are ``abaw_ce.models.cexprnet``'s; the track holds the
losses (``model``, ``modules``) and the training stage (``train``)."""
