"""Checks of the rollout workers' settings that run before anything is written or Ray starts
(issue 13): an unreachable `--ray-address` is one line at once, not minutes of Ray retries."""

from __future__ import annotations

import socket

import pytest

from spo_store.errors import SpoError
from spo_train.rollouts.workers import check_ray_address


def test_unreachable_ray_address_is_refused_at_once():
    with socket.socket() as s:  # a port nothing listens on: bind, then close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(SpoError, match="nothing answers at 127.0.0.1"):
            check_ray_address(address)
    with pytest.raises(SpoError, match="give HOST:PORT"):
        check_ray_address("head-node")


def test_listening_or_auto_address_passes():
    check_ray_address(None)
    check_ray_address("auto")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        check_ray_address(f"127.0.0.1:{server.getsockname()[1]}")
