"""From trainer plugins to the methods ``powertrain finetune --method`` knows."""

from __future__ import annotations

from powertrain.errors import ConfigError, InvalidRequest
from powertrain.flywheel.base import Trainer
from powertrain.plugins import plugin_manager


def trainer_classes() -> dict[str, type[Trainer]]:
    """Every registered fine-tuning method by name, built-ins and third-party alike."""
    found: dict[str, type[Trainer]] = {}

    def register(cls: type[Trainer]) -> None:
        if cls.name in found and found[cls.name] is not cls:
            raise ConfigError(f"two plugins register a fine-tuning method named {cls.name!r}")
        found[cls.name] = cls

    plugin_manager().hook.register_trainers(register=register)
    return found


def trainer(name: str) -> Trainer:
    classes = trainer_classes()
    try:
        return classes[name]()
    except KeyError:
        known = ", ".join(sorted(classes)) or "none"
        raise InvalidRequest(
            f"unknown fine-tuning method {name!r} (known: {known})", param="method"
        ) from None
