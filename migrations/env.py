"""Alembic's environment for Engines' schema upgrades.

Engines runs the migrations itself when it starts (`prepare_database` in
engines.py); nobody types a migration command. It hands over, through the
Alembic config's `attributes`, the connection to upgrade — already inside the
one transaction the whole upgrade runs in, so that a failure anywhere leaves
the database as it was — and the metadata with the naming convention.
"""

from alembic import context

config = context.config
context.configure(
    connection=config.attributes["connection"],
    target_metadata=config.attributes["target_metadata"],
    # SQLite cannot ALTER most of a table: batch mode copies it instead.
    render_as_batch=True,
    # What the model's DDL makes beside its tables (the search index), which
    # autogenerate would otherwise take for tables to drop.
    include_name=config.attributes.get("include_name"),
    # Where the revision is kept: the current schema, but for the scratch
    # schema in which Engines builds what a revision looks like.
    version_table_schema=config.attributes.get("version_table_schema"),
)
with context.begin_transaction():
    context.run_migrations()
