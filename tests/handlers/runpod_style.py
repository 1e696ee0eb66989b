"""Written for runpod: a plain function named handler taking a dict job."""


def handler(job):
    job_input = job["input"]
    if job_input.get("fail"):
        return {"error": "asked to fail"}
    if job_input.get("refresh"):
        return {"refresh_worker": True, "ok": True}
    return {"echo": job_input, "id_seen": job["id"]}
