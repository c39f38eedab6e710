"""A stage's typed parameters: a view of the config sections it reads, not a second schema.

A view is a pydantic model whose fields are sections of the one schema (core/config.py), each
typed by that section's own model::

    class TrainParams(StageParams):
        model: ModelConfig
        train: TrainConfig
        runtime: RuntimeConfig

Its fields are the stage's ``sections`` (core/spec.py derives them from the view), so the two
cannot disagree, and the defaults are the schema's: a view declares no default and no field of
its own (checked when the class is made). Reading a section the view does not hold is an
AttributeError naming the sections it does: a stage cannot depend on a setting its cache key
leaves out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from core.config import Config, format_validation_error
from core.errors import UserError


class StageParams(BaseModel):
    # frozen: a stage cannot swap a section for one its cache key does not describe.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, info in cls.model_fields.items():
            schema = Config.model_fields.get(name)
            if schema is None or info.annotation != schema.annotation:
                want = "not a config section" if schema is None else f"core.config types it {schema.annotation}"
                raise TypeError(
                    f"{cls.__name__}.{name}: a view holds config sections as the schema types them ({want})"
                )
            if not info.is_required():
                raise TypeError(f"{cls.__name__}.{name}: a view declares no default; the schema's is used")

    @classmethod
    def sections(cls) -> tuple[str, ...]:
        """The config sections the stage reads, in the view's order (its flags' order)."""
        return tuple(cls.model_fields)

    @classmethod
    def of(cls, cfg: Config) -> Self:
        """The view of a whole config: its sections themselves, not copies."""
        return cls(**{s: getattr(cfg, s) for s in cls.sections()})

    @classmethod
    def from_tree(cls, tree: dict, where: str) -> Self:
        """Validated from ``{"train": {"lora": {"r": 16}}, ...}`` (a stage's flags); a section the tree
        leaves out takes the schema's default, as ``Config`` gives it."""
        full = {
            s: tree[s] if s in tree else Config.model_fields[s].get_default(call_default_factory=True)
            for s in cls.sections()
        }
        try:
            return cls.model_validate({**tree, **full})
        except ValidationError as err:
            raise UserError(format_validation_error(err, where, model=cls)) from None

    if not TYPE_CHECKING:  # type checkers see only the declared sections

        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):  # pydantic's private attributes
                return super().__getattr__(name)
            raise AttributeError(
                f"{type(self).__name__} holds the sections {', '.join(self.sections())}, not {name!r}: "
                "a stage reads only the sections its view declares (stages/registry.py), which its cache key covers"
            )
