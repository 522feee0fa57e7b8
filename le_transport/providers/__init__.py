"""Pluggable providers: where a service lives (domains) and who the caller is (auth)."""

from .domains import DomainProvider, StaticDomains, validate_host

__all__ = ["DomainProvider", "StaticDomains", "validate_host"]
