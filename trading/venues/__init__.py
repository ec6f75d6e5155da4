"""Venue gateways: one protocol (base.Gateway), one adapter per kind of venue."""
