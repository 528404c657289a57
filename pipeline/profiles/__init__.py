"""Training profiles: nested frozen dataclasses <-> TOML.

A :class:`Profile` says everything about one fine-tune except, usually, the data file: where
the weights come from (``[model]``), the LoRA adapter (``[lora]``), the optimisation
(``[train]``) and how to read the data (``[data]``). The shipped profiles live in
``profiles/*.toml`` at the top of the checkout and are loaded by name.

Contract:

- :func:`load_profile` reads TOML with :mod:`tomllib`. Every problem in a file (unknown keys,
  with a did-you-mean; wrong types; values out of range; invalid combinations; float16) is
  gathered and raised as ONE :class:`ProfileValidationError` (a
  :class:`~pipeline.errors.ProfileError`) with one line per problem, in file order::

      profiles/mine.toml: train.batch_size = 0: too small (allowed: 1 to 4096)

  A TOML syntax error is a :class:`~pipeline.errors.ProfileError` naming file, line and column.
- :func:`save_profile` writes plain TOML (tomli-w; no comments) to a temporary file and renames
  it over the target. ``load_profile(save_profile(p, path)) == p``. TOML has no null: a field
  whose value is None (unset) is left out of the file, and every field that may be None
  defaults to None.
- The dataclasses check themselves in ``__post_init__``, so a :class:`Profile` built in code is
  as valid as a loaded one. Allowed ranges and choices sit in the type hints (``Annotated`` and
  ``Literal``); the attribute docstrings are the help text. :func:`describe_fields` gives
  (key, type, default, allowed, help) for every field and :func:`validate_field` checks one
  value typed as text, for editing in place; :func:`profile_problems` checks a whole dict
  without raising.

Nothing heavy is imported here (no jax, keras or textual).
"""

from __future__ import annotations

# ``os`` stays an attribute of the package: tests patch ``profiles.os.replace`` to make
# :func:`save_profile` fail (the os module is shared, so the patch reaches ``io``).
import os as os

from pipeline.profiles.constraints import Items, Range, Refuse, Rule, Text
from pipeline.profiles.fields import (
    FieldInfo,
    FieldResult,
    describe_field,
    describe_fields,
    replace_fields,
    validate_field,
)
from pipeline.profiles.io import (
    dumps_profile,
    list_profiles,
    load_profile,
    loads_profile,
    profile_from_dict,
    profile_path,
    profile_problems,
    profile_to_dict,
    save_profile,
)
from pipeline.profiles.paths import PROFILES_DIR
from pipeline.profiles.problems import UNSET, Problem, ProfileValidationError, format_value
from pipeline.profiles.schema import (
    LORA_TARGETS,
    DataConfig,
    DataFormat,
    Dedup,
    Dtype,
    LoraConfig,
    LoraTarget,
    ModelConfig,
    Profile,
    Schedule,
    TrainConfig,
)

__all__ = [
    "LORA_TARGETS",
    "PROFILES_DIR",
    "UNSET",
    "DataConfig",
    "DataFormat",
    "Dedup",
    "Dtype",
    "FieldInfo",
    "FieldResult",
    "Items",
    "LoraConfig",
    "LoraTarget",
    "ModelConfig",
    "Problem",
    "Profile",
    "ProfileValidationError",
    "Range",
    "Refuse",
    "Rule",
    "Schedule",
    "Text",
    "TrainConfig",
    "describe_field",
    "describe_fields",
    "dumps_profile",
    "format_value",
    "list_profiles",
    "load_profile",
    "loads_profile",
    "profile_from_dict",
    "profile_path",
    "profile_problems",
    "profile_to_dict",
    "replace_fields",
    "save_profile",
    "validate_field",
]
