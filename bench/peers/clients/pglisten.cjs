// pg-listen (npm): createSubscriber + notifications.on(channel), run by the peers benchmark; pg-listen
// JSON.parses each payload (a row_to_json(NEW) of the peers' trigger) itself.
//   node pglisten.cjs --port P --db D --channel C --n N --mode throughput|latency
// Same protocol as pgchanges_client.py: READY, DONE {json} at the N-th change, idle.
const createSubscriber = require('pg-listen')
const { parseArgs } = require('node:util')

const { values: a } = parseArgs({ options: {
  host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string' }, db: { type: 'string' },
  channel: { type: 'string' }, n: { type: 'string' }, mode: { type: 'string', default: 'throughput' } } })
const n = Number(a.n), latency = a.mode === 'latency'
const now = () => (performance.timeOrigin + performance.now()) / 1000
const subscriber = (createSubscriber.default || createSubscriber)(
  { host: a.host, port: Number(a.port), database: a.db, user: 'postgres' })
let seen = 0, tFirst = 0
const lat = []
subscriber.notifications.on(a.channel, (row) => {
  if (latency) lat.push(now() - row.payload.t)
  seen++
  if (seen === 1) tFirst = now()
  if (seen === n) {
    process.stdout.write('DONE ' + JSON.stringify({ n: seen, t_first: tFirst, t_last: now(), lat }) + '\n')
  }
})
subscriber.events.on('error', (e) => { console.error('pg-listen error', e); process.exit(1) })
;(async () => {
  await subscriber.connect()
  await subscriber.listenTo(a.channel)
  process.stdout.write('READY\n')
})()
setInterval(() => {}, 1 << 30)
