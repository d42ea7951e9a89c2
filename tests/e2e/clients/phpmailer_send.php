<?php
// Send one message with PHPMailer over plain SMTP (no TLS) for smtptap's
// end-to-end tests.
// usage: php phpmailer_send.php HOST PORT FROM TO SUBJECT BODYFILE [USER PASS]
// Prints every line the server sent as "S: <line>" on stdout; exit 0 when
// the message was accepted, 1 otherwise.
require '/usr/share/php/libphp-phpmailer/autoload.php';

use PHPMailer\PHPMailer\PHPMailer;
use PHPMailer\PHPMailer\SMTP;

if ($argc < 7) {
    fwrite(STDERR, "usage: phpmailer_send.php HOST PORT FROM TO SUBJECT BODYFILE [USER PASS]\n");
    exit(2);
}
[$self, $host, $port, $from, $to, $subject, $bodyfile] = array_slice($argv, 0, 7);

$mail = new PHPMailer(true);
$mail->isSMTP();
$mail->Host = $host;
$mail->Port = (int)$port;
$mail->SMTPSecure = '';
$mail->SMTPAutoTLS = false;
$mail->Timeout = 30;
$mail->CharSet = 'UTF-8';
$mail->SMTPDebug = SMTP::DEBUG_SERVER;
$mail->Debugoutput = function ($str, $level) {
    // A multi-line reply comes as one string: only its first line carries
    // the "SERVER -> CLIENT: " prefix.
    $server = strpos($str, 'SERVER -> CLIENT: ') === 0;
    if ($server) {
        $str = substr($str, strlen('SERVER -> CLIENT: '));
    }
    foreach (preg_split('/\r?\n/', rtrim($str, "\r\n")) as $l) {
        echo $server ? 'S: ' : '# ', $l, "\n";
    }
};
if ($argc >= 9) {
    $mail->SMTPAuth = true;
    $mail->Username = $argv[7];
    $mail->Password = $argv[8];
} else {
    $mail->SMTPAuth = false;
}
$mail->setFrom($from, 'PHPMailer Test');
$mail->addAddress($to);
$mail->Subject = $subject;
$mail->Body = file_get_contents($bodyfile);
$mail->MessageID = '<phpmailer-' . getmypid() . '@smtptap.test>';
try {
    $mail->send();
    echo "RESULT: sent\n";
    exit(0);
} catch (Exception $e) {
    echo "RESULT: failed: ", $mail->ErrorInfo, "\n";
    exit(1);
}
