// postgres.js (npm `postgres` v3): sql.subscribe('*:public.items', (row, info) => ...), run by the peers benchmark.
//   node postgresjs.mjs --port P --db D --n N --mode throughput|latency
// It makes its own TEMPORARY slot when it subscribes (no named slot, no resume, nothing acknowledged) and
// parses every value with its type parsers (int8 and numeric stay strings, timestamptz a Date, jsonb an object)
// before the callback runs. Same protocol as pgchanges_client.py: READY, DONE {json} at the N-th change, idle.
import postgres from 'postgres'
import { parseArgs } from 'node:util'

const { values: a } = parseArgs({ options: {
  host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string' }, db: { type: 'string' },
  n: { type: 'string' }, mode: { type: 'string', default: 'throughput' } } })
const n = Number(a.n), latency = a.mode === 'latency'
const now = () => (performance.timeOrigin + performance.now()) / 1000
const sql = postgres({ host: a.host, port: Number(a.port), database: a.db, user: 'postgres',
  publications: 'peers_pub', onnotice: () => {} })
let seen = 0, tFirst = 0
const lat = []
await sql.subscribe(latency ? 'insert:public.items' : '*:public.items', (row) => {
  if (latency) lat.push(now() - row.payload.t)
  seen++
  if (seen === 1) tFirst = now()
  if (seen === n) {
    process.stdout.write('DONE ' + JSON.stringify({ n: seen, t_first: tFirst, t_last: now(), lat }) + '\n')
  }
}, () => {})
process.stdout.write('READY\n')
setInterval(() => {}, 1 << 30)
