#!/usr/bin/env bash
# placeholder until the NixOS engineer lands tests/nixos-eval.sh
exit 1
