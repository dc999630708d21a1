import pytest
import sqlalchemy

from pgchanges import conninfo as ci
from pgchanges.errors import ConfigError


def test_redact_removes_password_from_keyword_and_url_forms():
    assert "hunter2" not in ci.redact("host=db user=app password=hunter2 dbname=shop")
    assert "hunter2" not in ci.redact("postgresql://app:hunter2@db:5432/shop")
    assert "host=db" in ci.redact("postgresql://app:hunter2@db:5432/shop")


def test_describe_error_strips_password():
    text = ci.describe_error(Exception("failed for postgresql://app:hunter2@db/shop"), "password=hunter2")
    assert "hunter2" not in text


def test_sqlalchemy_engine_url_becomes_libpq_conninfo():
    engine = sqlalchemy.create_engine("postgresql+psycopg://app:s3cret@db.example:6543/shop")
    resolved = ci.resolve(engine=engine)
    assert "password=s3cret" in resolved and "port=6543" in resolved and "dbname=shop" in resolved
    assert "application_name=pgchanges" in resolved


def test_dict_and_env(monkeypatch):
    assert "dbname=shop" in ci.resolve({"host": "db", "dbname": "shop"})
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@envhost/envdb")
    assert "host=envhost" in ci.resolve()


def test_rejects_non_postgres_engine_and_bad_syntax():
    with pytest.raises(ConfigError):
        ci.resolve(engine=sqlalchemy.create_engine("sqlite://"))
    with pytest.raises(ConfigError) as info:
        ci.resolve("host=db password='unterminated")
    assert "unterminated" not in str(info.value) or "password" not in str(info.value)
