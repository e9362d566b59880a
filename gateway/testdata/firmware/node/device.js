// A device built on the vendor's Node SDK (alibabacloud-iot-device-sdk),
// used as is: gateway/compat_test.go TestNodeSDKDevice runs it against the
// gateway's local listener. It prints what happens as JSON lines on stdout
// and takes commands on stdin ("post <json>"). Configuration comes from the
// environment: EDGEGW_BROKER_URL (mqtt://host:port), EDGEGW_PK, EDGEGW_DN,
// EDGEGW_DS.
'use strict';
const iot = require('alibabacloud-iot-device-sdk');
const readline = require('readline');

function out(ev) { process.stdout.write(JSON.stringify(ev) + '\n'); }

const device = iot.device({
  productKey: process.env.EDGEGW_PK,
  deviceName: process.env.EDGEGW_DN,
  deviceSecret: process.env.EDGEGW_DS,
  brokerUrl: process.env.EDGEGW_BROKER_URL,
});
const client = device._mqttClient;
const o = client.options;
out({ event: 'sdk', version: iot.sdkver, clientId: o.clientId, username: o.username,
  keepalive: o.keepalive, clean: o.clean, protocolVersion: o.protocolVersion });

client.on('packetsend', (p) => {
  if (p.cmd === 'subscribe') out({ event: 'subscribe', filters: p.subscriptions.map((s) => [s.topic, s.qos]) });
  if (p.cmd === 'publish') out({ event: 'publish', topic: p.topic, qos: p.qos, payload: p.payload.toString() });
});
client.on('packetreceive', (p) => {
  if (p.cmd === 'suback') out({ event: 'suback', granted: p.granted });
});

for (const ev of ['connect', 'reconnect', 'close', 'offline', 'error']) {
  device.on(ev, (args) => {
    const e = { event: ev };
    if (ev === 'error') e.error = String(args && args[0]);
    out(e);
  });
}
device.on('message', (topic, payload) => out({ event: 'message', topic, payload: payload.toString() }));

device.onProps((cmd) => {
  out({ event: 'props', id: cmd.id, params: cmd.params });
  // What the SDK's demo does: report the values that were set.
  device.postProps(cmd.params, (res) => out({ event: 'post_reply', id: res.id, code: res.code }));
});
device.onService('Toggle', (res, reply) => {
  const sync = !!(res.params && res.params.sync);
  out({ event: 'service', id: res.id, name: 'Toggle', sync });
  reply({ id: res.id, code: 200, data: { toggled: true } }, sync ? 'sync' : 'async');
});
device.onShadow((res) => out({ event: 'shadow', payload: res }));

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, ...rest] = line.split(' ');
  if (cmd === 'post') {
    device.postProps(JSON.parse(rest.join(' ')), (res) => out({ event: 'post_reply', id: res.id, code: res.code }));
  }
}).on('close', () => process.exit(0));
