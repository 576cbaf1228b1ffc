"""The one thing pyproject.toml cannot say: the worker agent lives in the
repository's ``worker/`` folder but is installed as the package
``ecloud_worker``, so that installing ecloud does not take the global name
``worker`` in a user's environment (issue 19). Everything else is in
pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["ecloud", "ecloud.*", "onehook", "onehook.*"]),
              "ecloud_worker"],
    package_dir={"ecloud_worker": "worker"},
)
