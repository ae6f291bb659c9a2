"""Sidecar mode's HTTP side (SPEC 11): the seed's external-connector contract, beside the plugin routes."""

from .app import create_sidecar_app

__all__ = ["create_sidecar_app"]
