"""Certificates, the secured broker's configuration and the worker accounts."""
