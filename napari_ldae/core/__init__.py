"""The LDAE itself: pure torch, no Qt, no napari. Everything else calls into this package."""

#: The latent scale factor s the reference code hard-codes (the official release's weights were
#: trained with it). Kept here, import-light, for the CLI.
REFERENCE_SCALE_FACTOR = 0.8730

#: How a trajectory places x_T at a date (:mod:`napari_ldae.core.trajectory`), the default first.
#: Kept here, import-light, for the CLI.
X_T_RULES = ("hold", "slerp", "latest")
DEFAULT_X_T_RULE = X_T_RULES[0]

#: How a trajectory places y at a date (:mod:`napari_ldae.core.trajectory`), the default first:
#: "anchored" through every visit's y, "line" the least-squares line. Import-light, for the CLI.
Y_RULES = ("anchored", "line")
DEFAULT_Y_RULE = Y_RULES[0]
