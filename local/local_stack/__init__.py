"""The local stack: ec2-isolation on an embedded moto server (or any AWS-compatible endpoint).

`ec2-isolation serve` / `ec2-isolation demo` on the command line; `LocalStack` from Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from local_stack.stack import LocalStack

__all__ = ["LocalStack"]


def __getattr__(name: str) -> Any:
    # Lazy: `local_stack.templates` is imported by the template checks, which need no moto server.
    if name == "LocalStack":
        from local_stack.stack import LocalStack

        return LocalStack
    raise AttributeError(name)
