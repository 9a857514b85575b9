"""aiosqlite persistence: schema, migrations and one repository per aggregate.

Nothing here imports slixmpp or aiohttp.
"""

from storage.conn import BodyAwaitedOutside, Conn
from storage.db import Database, SchemaTooNew

__all__ = ["BodyAwaitedOutside", "Conn", "Database", "SchemaTooNew"]
