"""Database: models, engine, migrations, job state machine."""
