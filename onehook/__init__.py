"""The OpenNebula state hook ecloud ships: a program oned's hook manager
runs on the front-end on a VM's state change (see :mod:`onehook.hook`)."""
