"""A pgoutput encoder for tests: the inverse of pgchanges.pgoutput.Decoder, written from the protocol docs."""

from __future__ import annotations

import struct

from pgchanges import pgoutput as p


def _s(text: str) -> bytes:
    return text.encode() + b"\0"


def _tuple(data: p.TupleData) -> bytes:
    out = struct.pack("!h", len(data.values))
    for i, value in enumerate(data.values):
        if value is None:
            out += b"n"
        elif value is p.UNCHANGED_TOAST:
            out += b"u"
        else:
            kind = b"b" if data.binary and data.binary[i] else b"t"
            out += kind + struct.pack("!i", len(value)) + value
    return out


def _xid(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack("!I", xid)


def encode(m: p.Message) -> bytes:
    match m:
        case p.Begin():
            return b"B" + struct.pack("!Qq", m.final_lsn, p.pg_micros(m.commit_time)) + struct.pack("!I", m.xid)
        case p.Commit():
            return b"C" + struct.pack("!BQQq", m.flags, m.commit_lsn, m.end_lsn, p.pg_micros(m.commit_time))
        case p.Origin():
            return b"O" + struct.pack("!Q", m.commit_lsn) + _s(m.name)
        case p.Relation():
            out = b"R" + _xid(m.xid) + struct.pack("!I", m.oid) + _s(m.namespace) + _s(m.name)
            out += m.replica_identity.encode() + struct.pack("!h", len(m.columns))
            for c in m.columns:
                out += struct.pack("!B", int(c.is_key)) + _s(c.name) + struct.pack("!Ii", c.type_oid, c.type_modifier)
            return out
        case p.Type():
            return b"Y" + _xid(m.xid) + struct.pack("!I", m.oid) + _s(m.namespace) + _s(m.name)
        case p.Insert():
            return b"I" + _xid(m.xid) + struct.pack("!I", m.relation_oid) + b"N" + _tuple(m.new)
        case p.Update():
            out = b"U" + _xid(m.xid) + struct.pack("!I", m.relation_oid)
            if m.old is not None and m.old_kind is not None:
                out += m.old_kind.encode() + _tuple(m.old)
            return out + b"N" + _tuple(m.new)
        case p.Delete():
            return b"D" + _xid(m.xid) + struct.pack("!I", m.relation_oid) + m.old_kind.encode() + _tuple(m.old)
        case p.Truncate():
            out = b"T" + _xid(m.xid) + struct.pack("!iB", len(m.relation_oids), m.options)
            return out + b"".join(struct.pack("!I", oid) for oid in m.relation_oids)
        case p.LogicalMessage():
            out = b"M" + _xid(m.xid) + struct.pack("!BQ", int(m.transactional), m.lsn) + _s(m.prefix)
            return out + struct.pack("!i", len(m.content)) + m.content
        case p.StreamStart():
            return b"S" + struct.pack("!IB", m.xid, int(m.first_segment))
        case p.StreamStop():
            return b"E"
        case p.StreamCommit():
            return b"c" + struct.pack("!IBQQq", m.xid, m.flags, m.commit_lsn, m.end_lsn, p.pg_micros(m.commit_time))
        case p.StreamAbort():
            return b"A" + struct.pack("!II", m.xid, m.subxid)
    raise TypeError(m)
