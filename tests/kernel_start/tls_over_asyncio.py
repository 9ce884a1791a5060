# tests/sessions.rs: asyncio's TLS works in a worker (ssl and asyncio.sslproto
# are deferred while the kernel starts): an echo over TLS on the worker's own
# loopback, with a self-signed test certificate for localhost.
import asyncio
import concurrent.futures
import os
import ssl
import tempfile

CERTIFICATE = """-----BEGIN CERTIFICATE-----
MIIBmjCCAUGgAwIBAgIUIe+2wEZpzCSxELy+JDfnLQB8iNUwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMzA4MjkzM1oYDzIxMjYxMTA5
MDgyOTMzWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQMQFFBhw15pVTP2XbptJccbdif1zhA6A5M90+hewUYMhLLTztr8cmJ
huuXH8HfNGwaeOZtwWulpSvMYvLuA/KWo28wbTAdBgNVHQ4EFgQUtkOZtpZUTOhC
IXG1i+5ornwlVXYwHwYDVR0jBBgwFoAUtkOZtpZUTOhCIXG1i+5ornwlVXYwDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI
zj0EAwIDRwAwRAIgWg7bU6xueFa+AeRG6vLWtNp+cp7WVTuXB+WVxTFUKugCIB0Z
0cqmSfKDro7HxVKbCoNPvRCy4XzAhLL0Bk6EPPCB
-----END CERTIFICATE-----
"""
KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgjmW5wg8uh7Dd5sbj
j5YNryRT9BVcQojWDkQGehLGNfKhRANCAAQMQFFBhw15pVTP2XbptJccbdif1zhA
6A5M90+hewUYMhLLTztr8cmJhuuXH8HfNGwaeOZtwWulpSvMYvLuA/KW
-----END PRIVATE KEY-----
"""

directory = tempfile.mkdtemp()
for name, text in (("cert.pem", CERTIFICATE), ("key.pem", KEY)):
    with open(os.path.join(directory, name), "w", encoding="ascii") as file:
        file.write(text)
server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_context.load_cert_chain(os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem"))
client_context = ssl.create_default_context(cafile=os.path.join(directory, "cert.pem"))


async def echo_once():
    async def echo(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context, server_hostname="localhost")
    writer.write(b"hello over tls\n")
    await writer.drain()
    line = await reader.readline()
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    server.close()
    await server.wait_closed()
    return line, version


# In a thread of its own: the kernel's event loop is running in this one.
with concurrent.futures.ThreadPoolExecutor(1) as pool:
    print(*pool.submit(asyncio.run, echo_once()).result())
