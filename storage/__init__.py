"""aiosqlite persistence: schema, migrations and one repository per aggregate.

Nothing here imports slixmpp or aiohttp.
"""

from storage.db import Database, SchemaTooNew

__all__ = ["Database", "SchemaTooNew"]
