"""Who is on the other end of a unix socket (SO_PEERCRED), and whether they may talk to this syncar."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    """The credentials the kernel recorded when the peer connected; they cannot be forged by the peer."""
    return Peer(*_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)))


class PeerPolicy:
    """An allowlist of uids and gids; an empty policy lets in whoever the socket file's mode lets in."""

    def __init__(self, uids: tuple[int, ...], gids: tuple[int, ...]) -> None:
        self._uids = frozenset(uids)
        self._gids = frozenset(gids)

    @property
    def enforced(self) -> bool:
        return bool(self._uids or self._gids)

    def refusal(self, sock: socket.socket | None) -> str | None:
        """Why this peer is refused, or None if it may connect."""
        if not self.enforced:
            return None
        if sock is None:
            return "cannot tell who is connecting"
        peer = peer_of(sock)
        if peer.uid in self._uids or peer.gid in self._gids:
            return None
        return f"uid {peer.uid} gid {peer.gid} (pid {peer.pid}) is not allowed to use this syncar"
