"""Files in and out: download an input URL into the job's folder, return a File.

With a bucket (BUCKET_ENDPOINT_URL=http(s)://host[:port]/BUCKET, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY and
the `files` extra) the File becomes {"url": presigned GET URL, "content_type", "size"}; without one it is inlined as
{"content_type", "data_base64"}:

python -m handler_sdk.serve examples/files.py --test-input '{"input": {"text": "hello"}}'

Downloads refuse private and loopback addresses; HANDLER_SDK_DOWNLOAD_ALLOW_PRIVATE=1 allows them (a local bucket):

curl -s localhost:8000/v2/local/runsync -d '{"input": {"url": "https://example.com/"}}'
"""

from handler_sdk import File, files, handler


@handler
def shout(job):
    if "url" in job.input:
        # Into this job's own temporary folder, removed when the job ends; at most 10 MB, or the job fails clearly.
        path = files.download(job.input["url"], max_bytes=10_000_000)
        text = path.read_text(errors="replace")
    else:
        text = job.input.get("text", "")
    return {"chars": len(text), "loud": File(text.upper().encode(), content_type="text/plain", name="loud.txt")}
