// Send one message with Nodemailer over plain SMTP (no TLS) for smtptap's
// end-to-end tests.
// usage: node nodemailer_send.js HOST PORT FROM TO SUBJECT BODYFILE [USER PASS]
// Prints every line the server sent as "S: <line>" on stdout; exit 0 when
// the message was accepted, 1 otherwise.
'use strict';
const fs = require('fs');
const nodemailer = require('/usr/share/nodejs/nodemailer');

const a = process.argv.slice(2);
if (a.length < 6) {
    process.stderr.write('usage: nodemailer_send.js HOST PORT FROM TO SUBJECT BODYFILE [USER PASS]\n');
    process.exit(2);
}
const [host, port, from, to, subject, bodyfile] = a;

function emit(level) {
    return (meta, msg, ...args) => {
        let text = typeof meta === 'string' ? meta : String(msg);
        for (const arg of args) text = text.replace(/%[sd]/, String(arg));
        const tnx = meta && typeof meta === 'object' ? meta.tnx : undefined;
        for (const line of text.split(/\r?\n/)) {
            if (tnx === 'server') {
                if (line.length) process.stdout.write('S: ' + line + '\n');
            } else {
                process.stdout.write('# ' + level + ' ' + line + '\n');
            }
        }
    };
}
const logger = {};
for (const l of ['trace', 'debug', 'info', 'warn', 'error', 'fatal']) logger[l] = emit(l);

const opts = {
    host, port: Number(port), secure: false, ignoreTLS: true,
    connectionTimeout: 30000, greetingTimeout: 30000, socketTimeout: 30000,
    name: 'nodemailer.test', logger, debug: true,
};
if (a.length >= 8) opts.auth = { user: a[6], pass: a[7] };
const transport = nodemailer.createTransport(opts);
transport.sendMail({
    from, to, subject,
    text: fs.readFileSync(bodyfile, 'utf8'),
    messageId: '<nodemailer-' + process.pid + '@smtptap.test>',
}).then(info => {
    process.stdout.write('RESULT: sent ' + info.response + '\n');
    transport.close();
    process.exit(0);
}, err => {
    process.stdout.write('RESULT: failed ' + err.message + '\n');
    transport.close();
    process.exit(1);
});
