"""Tokens recently found valid, kept in memory: a request's token check then needs no
storage read (issue #14: with one read for the token and one for the answer, the token's
read was half of a REST read's trips to storage).

What stays correct:
- Expiry: an entry keeps its token's `expires_at` and is refused from that millisecond
  on, as storage would refuse it.
- Revocation through this service (logout, a login beyond `max_tokens_per_user`, an
  account found gone): the `Identity` action that revokes calls `forget()` or
  `forget_user()` once its transaction has committed, which drops the entries and bumps
  the generation. A check whose storage read began before that commit saw the token still
  valid (as without a cache); it only stores what it saw if no revocation ran meanwhile
  (`put()` compares the generation taken before the read), so no revoked token is
  remembered.
- Revocation this process cannot see (another instance on the same PostgreSQL database,
  or SQL run by an operator): an entry is used for at most `fresh_ms` after it was read
  from storage, then storage is asked again. That is the documented bound
  (`[auth] token_cache_s`); 0 disables the cache.

Memory is bounded: at most `max_entries` tokens, the least recently read going first.
"""

from __future__ import annotations

from collections import OrderedDict

from component.model import User, UserId


class TokenCache:
    def __init__(self, fresh_ms: int, max_entries: int = 10_000) -> None:
        self.fresh_ms = fresh_ms
        self.max_entries = max_entries
        # token hash -> (user, expires_at_ms, fresh_until_ms), oldest read first.
        self._entries: OrderedDict[bytes, tuple[User, int, int]] = OrderedDict()
        self._generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def generation(self) -> int:
        """Take it before reading a token from storage; give it back to `put()`."""
        return self._generation

    def get(self, token_hash: bytes, now_ms: int) -> User | None:
        """The token's user if it was read from storage less than `fresh_ms` ago and has
        not expired; None otherwise (ask storage)."""
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        user, expires_at, fresh_until = entry
        if now_ms >= expires_at or now_ms >= fresh_until:
            del self._entries[token_hash]
            return None
        return user

    def put(self, token_hash: bytes, user: User, expires_at: int, now_ms: int, generation: int) -> None:
        """Remember what storage said at `now_ms`, unless a revocation ran since
        `generation` was taken (the read may predate it)."""
        if self.fresh_ms <= 0 or generation != self._generation:
            return
        entries = self._entries
        entries.pop(token_hash, None)
        while len(entries) >= self.max_entries:
            entries.popitem(last=False)
        entries[token_hash] = (user, expires_at, now_ms + self.fresh_ms)

    def forget(self, token_hash: bytes) -> None:
        """The token was revoked (its transaction committed)."""
        self._generation += 1
        self._entries.pop(token_hash, None)

    def forget_user(self, user_id: UserId) -> None:
        """Some or all of the user's tokens were revoked (committed)."""
        self._generation += 1
        for token_hash in [h for h, (user, _, _) in self._entries.items() if user.id == user_id]:
            del self._entries[token_hash]
