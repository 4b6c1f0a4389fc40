"""The fields of `models.generator.DeepGIN`, known without importing Flax (a command that runs a
shipped model from its kept program checks the card's fields and never builds the network)."""

# The fields that define the generator's architecture: saved with checkpoints and shipped cards;
# the others are runtime choices.
ARCHITECTURE_FIELDS = (
    "base_features",
    "num_coarse_blocks",
    "num_refine_blocks",
    "coarse_rates",
    "refine_rates",
    "block_type",
    "attention",
    "back_projection",
    "coarse_only",
)
# Every field but Flax's parent and name; a test keeps it the same as `DeepGIN`'s.
DEEPGIN_FIELDS = (
    *ARCHITECTURE_FIELDS,
    "dtype",
    "attention_impl",
    "remat",
    "crop_padding",
    "init_scale",
    "init_scheme",
)
