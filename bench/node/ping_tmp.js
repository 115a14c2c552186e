const amqp = require('amqplib')
const uri = process.argv[2]
const mono = () => process.hrtime.bigint()
;(async () => {
  for (let rep = 0; rep < 2; rep++) {
    const c1 = await amqp.connect(uri); const c2 = await amqp.connect(uri)
    const pub = await c1.createChannel(); const sub = await c2.createChannel()
    const ex = 'nping' + rep
    await pub.assertExchange(ex, 'fanout', { durable: false })
    const q = await sub.assertQueue('', { exclusive: true }); await sub.bindQueue(q.queue, ex, '')
    const lat = []; let resolve
    await sub.consume(q.queue, (m) => { lat.push(Number(mono() - BigInt(m.content.toString()))); resolve() }, { noAck: true })
    for (let i = 0; i < 300; i++) {
      const p = new Promise((r) => { resolve = r })
      pub.publish(ex, '', Buffer.from(String(mono())))
      await p
      await new Promise((r) => setTimeout(r, 3))
    }
    lat.sort((a, b) => a - b)
    console.log(`node amqplib rep ${rep}: p50 ${(lat[150] / 1e6).toFixed(3)} ms p90 ${(lat[270] / 1e6).toFixed(3)}`)
    await c1.close(); await c2.close()
  }
})()
