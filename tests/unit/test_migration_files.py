"""The shipped migrations: numbered without gaps, a baseline for fresh installs, and never edited once landed."""

import hashlib
import re

from pgchanges.capture import migrations

# sha256 of every landed migration and of the baseline shipped now. A landed file is never edited (see
# capture/migrations.py): a schema change is a new numbered migration, whose hash is added here in the change
# that lands it. Only the newest baseline is ever run, so an older one is removed (with its hash) when a new one
# lands: baseline_0011.sql was replaced by baseline_0012.sql.
LANDED = {
    "0001_base.sql": "02864576515eea255d98437db5146aafc23fe71f08aaee568c8c9ed89ea568cd",
    "0002_outbox.sql": "005b459658a900dba68e549e8a6a82ee4b41844343ddfed8ae02df6248d82d41",
    "0003_logical.sql": "08dcdb7c62bcf0e050a545a984f1ff825a8e738d865849cf141d368251397f06",
    "0004_periodic.sql": "2437c1538cd56abcbacc3470ad34f1b58fd3309d6a33c0911837f8a07cfe243b",
    "0005_ddl.sql": "bb4e7051f02c78ac00dafd3cac64329b72f8b153a8018da41125a201d6d1f9c9",
    "0006_follow.sql": "915ecf3c8f1f7f6141795b8b7f2b5cdf22e7516dac06347f930eade6a052473c",
    "0007_polling.sql": "e6b651a95a2e6bb2ddd2c7bc78004bc8a95ff3c3ab3a083b6a9a63476324d4be",
    "0008_outbox_lanes.sql": "d38d0827834fff6994d49ef8e973ab533526533ac10f2aab18b52317d6d9175e",
    "0009_outbox_write_path.sql": "98f8a41bb03cfaae942206f36659a25daafd8ff9ea5b3aec28a3b52064d689d7",
    "0010_outbox_cut_pieces.sql": "d51a006f9cd5a468b10f68ed61f202c7d000a6c309c9a9548ac3ab206bc89363",
    "0011_notify_payload_v2.sql": "27ed51de2daf40deb7f89cc66851ec0370888b1665e5d9550215364a2e148d5f",
    "0012_notify_statement_triggers.sql": "b27f6d710673756cf8120b82a5123f2823bf2ac59a76757d2eff38f5ef54bd48",
    "baseline_0012.sql": "edacedb75c432fee624d0efc2d7dc4b1a8cc56b3c7234a45c802f7384e711b16",
}


def shipped_files():
    files = {f"{m.version:04d}_{m.name}.sql": m.sql for m in migrations.available()}
    base = migrations.baseline()
    assert base is not None
    files[f"baseline_{base.version:04d}.sql"] = base.sql
    return files


def test_landed_migrations_are_never_edited():
    hashes = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in shipped_files().items()}
    edited = sorted(name for name, digest in hashes.items() if LANDED.get(name, digest) != digest)
    assert edited == [], f"landed migrations were edited: {edited}; revert them and add a new migration instead"
    unlisted = sorted(set(hashes) - set(LANDED))
    assert unlisted == [], f"add the sha256 of {unlisted} to LANDED as it lands: {[hashes[n] for n in unlisted]}"
    assert sorted(set(LANDED) - set(hashes)) == [], "a landed migration was removed"


def test_versions_run_from_1_without_gaps_and_the_baseline_stands_for_a_prefix():
    versions = [m.version for m in migrations.available()]
    assert versions == list(range(1, len(versions) + 1))
    base = migrations.baseline()
    assert base is not None and base.version in versions


def test_the_baseline_records_exactly_the_migrations_it_stands_for():
    base = migrations.baseline()
    assert base is not None
    values = base.sql[base.sql.rindex("INSERT INTO pgchanges.migrations (version, name) VALUES") :]
    recorded = [(int(v), n) for v, n in re.findall(r"\((\d+), '([a-z0-9_]+)'\)", values)]
    assert recorded == [(m.version, m.name) for m in migrations.available() if m.version <= base.version]
