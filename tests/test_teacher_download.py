"""`run_kd.py teacher PAIR --download` against a local HTTP server: the published archive's layout, built here from
kd's own models; a URL that fails before one that works; every URL failing; corrupt downloads; torchvision's
weights. A tmp kd home (KD_HOME) holds its own teachers/pairs.yaml, so the repository's teachers/ is never touched."""
import functools
import hashlib
import io
import socket
import tarfile
import threading
import urllib.error
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from kd.cli import main
from kd.engine.checkpoint import load_weights
from kd.models import create_model
from test_faults import one_line

MEMBER = "cifar_teachers/{}_vanilla/ckpt_epoch_240.pth"


def checkpoint_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def constant_resnet8() -> dict:
    """resnet8 for 100 classes that calls every image class 0 (classifier weight 0, bias 1 for class 0)."""
    model = create_model("resnet8", 100)
    with torch.no_grad():
        model.get_classifier().weight.zero_()
        model.get_classifier().bias.zero_()
        model.get_classifier().bias[0] = 1.0
    return model.state_dict()


def tar_of(members: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Server:
    """http.server in a thread on 127.0.0.1, serving a folder and counting the requests of every path."""

    def __init__(self, folder):
        self.requests = {}
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests[self.path] = server.requests.get(self.path, 0) + 1
                if self.path == "/cut.tar":  # promises the whole archive, sends half, hangs up
                    data = (folder / "cifar_teachers.tar").read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[:len(data) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar_teachers.tar"  # nothing listens there: connection refused


def fake_cifar100(root):
    """100 class folders of 32x32 images: one training image each; one test image each, three for class c000."""
    for split, extra in (("train", 0), ("test", 2)):
        for c in range(100):
            folder = root / split / f"c{c:03d}"
            folder.mkdir(parents=True)
            for i in range(1 + (extra if c == 0 else 0)):
                Image.new("RGB", (32, 32), (c, i * 60, 90)).save(folder / f"{i}.png")
    return root


@pytest.fixture
def world(tmp_path, monkeypatch):
    """The web server with the archives, and a kd home whose pairs download from it."""
    www = tmp_path / "www"
    www.mkdir()
    r8 = checkpoint_bytes({"model": constant_resnet8(), "epoch": 240, "accuracy": 70.0})
    torch.manual_seed(0)
    r14 = checkpoint_bytes({"model": create_model("resnet14", 100).state_dict(), "epoch": 240})
    archive = tar_of({MEMBER.format("resnet8"): r8, MEMBER.format("resnet14"): r14})
    (www / "cifar_teachers.tar").write_bytes(archive)
    (www / "truncated.tar").write_bytes(archive[:len(archive) // 4])
    (www / "junk.tar").write_bytes(tar_of({MEMBER.format("resnet8"): b"not a checkpoint at all"}))
    (www / "wrong.tar").write_bytes(tar_of({MEMBER.format("resnet8"): r14}))  # resnet14's weights under resnet8
    (www / "direct.pth").write_bytes(r8)
    server = Server(www)
    home = tmp_path / "home"
    (home / "teachers").mkdir(parents=True)
    (home / "recipes").mkdir()
    (home / "results").mkdir()
    data = fake_cifar100(tmp_path / "cifar100")
    (home / "recipes" / "with-data.yaml").write_text(f"name: t\ndataset: cifar100\ndata_root: {data}\n"
                                                     f"student: resnet8\nmethods: [vanilla]\n")
    (home / "recipes" / "no-data.yaml").write_text(f"name: t\ndataset: cifar100\ndata_root: {tmp_path / 'none'}\n"
                                                   f"student: resnet14\nmethods: [vanilla]\n")
    (home / "recipes" / "imagenet.yaml").write_text("name: t\ndataset: imagenet\nstudent: torchvision:resnet34\n"
                                                    "methods: [vanilla]\n")
    (home / "results" / "published_cifar100.csv").write_text(
        "pair,teacher,student,method,top1,source\nresnet8->resnet8,resnet8,resnet8,teacher,12.34,this test\n")
    url = f"{server.url}/cifar_teachers.tar"
    pairs = {
        "r8": ("resnet8", "with-data", [url], MEMBER.format("resnet8")),
        "r14": ("resnet14", "no-data", [url], MEMBER.format("resnet14")),
        "second-works": ("resnet8", "no-data", [f"{server.url}/missing.tar", url], MEMBER.format("resnet8")),
        "none-works": ("resnet8", "no-data", [f"{server.url}/missing.tar", closed_port_url()], MEMBER.format("resnet8")),
        "truncated": ("resnet8", "no-data", [f"{server.url}/truncated.tar"], MEMBER.format("resnet8")),
        "cut": ("resnet8", "no-data", [f"{server.url}/cut.tar"], MEMBER.format("resnet8")),
        "junk": ("resnet8", "no-data", [f"{server.url}/junk.tar"], MEMBER.format("resnet8")),
        "wrong": ("resnet8", "no-data", [f"{server.url}/wrong.tar"], MEMBER.format("resnet8")),
        "no-member": ("resnet8", "no-data", [url], "cifar_teachers/resnet9_vanilla/ckpt_epoch_240.pth"),
        "direct": ("resnet8", "with-data", [f"{server.url}/direct.pth"], None),
        "published": ("resnet8", "with-data", [closed_port_url(), f"{server.url}/direct.pth"], MEMBER.format("resnet8")),
        "other-digest": ("resnet8", "no-data", [f"{server.url}/direct.pth"], None),
    }
    lines = []
    for name, (teacher, recipe, urls, member) in pairs.items():
        lines += [f"{name}:", f"  teacher: {teacher}", "  student: resnet8", "  dataset: cifar100",
                  f"  teacher_checkpoint: teachers/checkpoints/{name}.pth", f"  teacher_recipe: recipes/{recipe}.yaml",
                  f"  teacher_urls: [{', '.join(urls)}]"] + ([f"  teacher_member: {member}"] if member else [])
        lines += {"published": [f"  teacher_sha256: {{direct.pth: {hashlib.sha256(r8).hexdigest()}}}",
                                "  teacher_top1: {direct.pth: 56.78}"],
                  "other-digest": [f"  teacher_sha256: {{direct.pth: {'ab' * 32}}}"]}.get(name, [])
    lines += ["untrained:", "  teacher: resnet8", "  student: resnet8", "  dataset: cifar100",
              "  teacher_checkpoint: teachers/checkpoints/untrained.pth", "  teacher_recipe: recipes/no-data.yaml",
              "imagenet:", "  teacher: torchvision:resnet34", "  student: torchvision:resnet18", "  dataset: imagenet",
              "  teacher_checkpoint: teachers/checkpoints/imagenet.pth", "  teacher_recipe: recipes/imagenet.yaml",
              "  teacher_weights: ResNet34_Weights.IMAGENET1K_V1"]
    (home / "teachers" / "pairs.yaml").write_text("\n".join(lines) + "\n")
    for key, value in (("KD_HOME", home), ("KD_DOWNLOADS", tmp_path / "downloads"), ("KD_DATA", tmp_path / "kd-data"),
                       ("no_proxy", "127.0.0.1,localhost"), ("NO_PROXY", "127.0.0.1,localhost")):
        monkeypatch.setenv(key, str(value))
    yield {"home": home, "server": server, "r8": r8, "r14": r14, "downloads": tmp_path / "downloads"}
    server.close()


def saved(world, pair):
    return world["home"] / "teachers" / "checkpoints" / f"{pair}.pth"


def test_download_saves_records_and_evaluates_and_pairs_share_one_download(world, capsys):
    assert main(["teacher", "r8", "--download"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # as one line, whatever the console's width
    path = saved(world, "r8")
    assert path.read_bytes() == world["r8"]  # the published file, byte for byte
    digest = hashlib.sha256(world["r8"]).hexdigest()
    assert (path.parent / "r8.pth.sha256").read_text() == f"{digest}  r8.pth\n"
    load_weights(create_model("resnet8", 100), path, "teacher", "resnet8", 100)
    # the fake CIFAR-100 test split: 102 images, 3 of class c000, which the constant teacher always answers
    assert f"test top-1 {100 * 3 / 102:.2f}%" in out and "published: 12.34%" in out, out
    # a second pair of the same archive: no second download; its data is not here, so it says so and keeps the file
    assert main(["teacher", "r14", "--download"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # as one line, whatever the console's width
    assert world["server"].requests == {"/cifar_teachers.tar": 1}
    assert saved(world, "r14").read_bytes() == world["r14"] and (saved(world, "r14").parent / "r14.pth.sha256").is_file()
    assert "not evaluated: the cifar100 data is not here" in out and "saved to" in out, out
    # asked again, an existing checkpoint is kept as it is
    assert main(["teacher", "r8", "--download"]) == 0
    assert "remove it to download it again" in " ".join(capsys.readouterr().out.split())
    assert path.read_bytes() == world["r8"]


def test_a_direct_file_url_and_a_failing_first_url(world, capsys):
    assert main(["teacher", "direct", "--download"]) == 0
    assert saved(world, "direct").read_bytes() == world["r8"]
    assert main(["teacher", "second-works", "--download"]) == 0
    assert saved(world, "second-works").read_bytes() == world["r8"]
    assert world["server"].requests["/missing.tar"] == 1


def nothing_left(world, pair):
    assert not any(saved(world, pair).parent.glob(f"{pair}.pth*")), list(saved(world, pair).parent.iterdir())
    assert not world["downloads"].exists() or not any(world["downloads"].iterdir()), list(world["downloads"].iterdir())


def test_every_url_failing_is_one_line_naming_each_and_where_to_put_the_file(world, capsys):
    assert main(["teacher", "none-works", "--download"]) == 2
    line = one_line(capsys, "could not download the teacher of pair 'none-works' (resnet8)",
                    f"{world['server'].url}/missing.tar (HTTP 404 File not found)", "(no connection: ",
                    f"take {MEMBER.format('resnet8')} out of the archive and put it at {saved(world, 'none-works')}",
                    f"or put the archive itself at {world['downloads']}")
    assert "Connection refused" in line
    nothing_left(world, "none-works")


@pytest.mark.parametrize("pair, reason", [
    ("truncated", "not a readable tar archive"),
    ("cut", "/cut.tar ("),
    ("junk", "is not a readable torch checkpoint"),
    ("wrong", "does not fit the teacher architecture 'resnet8'"),
    ("no-member", "the archive holds no cifar_teachers/resnet9_vanilla/ckpt_epoch_240.pth"),
])
def test_a_corrupt_download_is_one_line_and_leaves_no_file(world, capsys, pair, reason):
    assert main(["teacher", pair, "--download"]) == 2
    one_line(capsys, f"could not download the teacher of pair '{pair}'", reason)
    nothing_left(world, pair)


def test_torchvision_weights_and_their_offline_failure(world, capsys, monkeypatch):
    import torchvision.models._api as api

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    assert main(["teacher", "imagenet", "--download"]) == 2
    one_line(capsys, "could not download the teacher of pair 'imagenet' (torchvision's ResNet34_Weights.IMAGENET1K_V1)",
             "https://download.pytorch.org/models/resnet34-b627a593.pth (<urlopen error [Errno -3]",
             "hub/checkpoints/resnet34-b627a593.pth")
    assert not saved(world, "imagenet").exists()

    torch.manual_seed(0)
    published = create_model("torchvision:resnet34", 1000).model.state_dict()  # torchvision's keys, no prefix
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda url, *a, **k: published)
    assert main(["teacher", "imagenet", "--download"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # as one line, whatever the console's width
    assert "published: 73.31%" in out and "not evaluated: the imagenet data is not here" in out, out
    state = torch.load(saved(world, "imagenet"), weights_only=True)
    assert state["arch"] == "torchvision:resnet34" and "ResNet34_Weights.IMAGENET1K_V1" in state["source"]
    model = create_model("torchvision:resnet34", 1000)
    load_weights(model, saved(world, "imagenet"), "teacher", "torchvision:resnet34", 1000)
    assert torch.equal(model.model.fc.weight, published["fc.weight"])


def test_a_pair_without_a_published_teacher_and_conflicting_options(world, capsys):
    assert main(["teacher", "untrained", "--download"]) == 2
    one_line(capsys, "pair 'untrained' lists no published teacher", "teacher untrained`")
    assert main(["teacher", "r8", "--download", "--retrain"]) == 2
    one_line(capsys, "choose one")
    assert not any((world["home"] / "teachers").glob("checkpoints/*"))


def test_a_local_copy_of_a_published_file_is_told_by_its_digest_and_checked(world, capsys, tmp_path):
    copy = tmp_path / "my-download.pt"  # another name: the digest says which published file it is
    copy.write_bytes(world["r8"])
    assert main(["teacher", "published", "--download", "--from", str(copy)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert saved(world, "published").read_bytes() == world["r8"] and copy.read_bytes() == world["r8"]
    assert "the published direct.pth from" in out and "published: 56.78%" in out, out  # the file's own figure
    assert f"test top-1 {100 * 3 / 102:.2f}%" in out, out
    assert world["server"].requests == {}  # nothing downloaded

    # a file of the published name whose digest is another: refused, nothing written
    damaged = tmp_path / "direct.pth"
    damaged.write_bytes(world["r8"][:-1] + b"x")
    saved(world, "published").unlink()
    assert main(["teacher", "published", "--download", "--from", str(damaged)]) == 2
    one_line(capsys, f"--from {damaged}: sha256 ", "not the published direct.pth's", "give an intact copy of direct.pth")
    assert not saved(world, "published").exists()
    # a file that is none of the pair's published files, a missing file, --from without --download
    stranger = tmp_path / "stranger.pt"
    stranger.write_bytes(world["r14"])
    assert main(["teacher", "published", "--download", "--from", str(stranger)]) == 2
    one_line(capsys, "are those of none of the published teachers of pair 'published'", "direct.pth (sha256 ")
    assert main(["teacher", "published", "--download", "--from", str(tmp_path / "nothing.pt")]) == 2
    one_line(capsys, "no such file")
    assert main(["teacher", "published", "--from", str(copy)]) == 2
    one_line(capsys, "add --download")
    assert not saved(world, "published").exists()


def test_a_download_whose_published_digest_differs_is_refused(world, capsys):
    assert main(["teacher", "other-digest", "--download"]) == 2
    one_line(capsys, "could not download the teacher of pair 'other-digest'", "not the published direct.pth's")
    nothing_left(world, "other-digest")


def test_a_full_disk_while_saving_a_download_says_to_run_the_command_again_not_to_resume(world, capsys, monkeypatch):
    import kd.engine.checkpoint as checkpoint
    from test_faults import FullDisk

    monkeypatch.setattr(checkpoint, "open", FullDisk("direct.pth.tmp", nth=1), raising=False)
    assert main(["teacher", "direct", "--download"]) == 2
    line = one_line(capsys, "no space left on the disk of", "direct.pth", "run the command again")
    assert "resume" not in line
    assert not any(saved(world, "direct").parent.glob("direct.pth*"))


def test_a_damaged_file_a_user_put_in_the_cache_is_moved_aside_never_deleted(world, capsys):
    from kd.fetch import cached_path

    url = f"{world['server'].url}/cifar_teachers.tar"
    cached = cached_path(url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"a half-copied archive")
    assert main(["teacher", "r8", "--download"]) == 2
    one_line(capsys, "could not download the teacher of pair 'r8'", "not a readable tar archive",
             f"the file that was in the download cache is moved aside to {cached}.rejected")
    assert (cached.parent / f"{cached.name}.rejected").read_bytes() == b"a half-copied archive"
    assert world["server"].requests == {}  # the cached file was taken as the download
    assert main(["teacher", "r8", "--download"]) == 0  # the next try downloads afresh
    assert saved(world, "r8").read_bytes() == world["r8"]


def test_a_download_cache_that_is_a_file_names_the_real_failure_and_where_to_put_the_file(world, capsys, monkeypatch,
                                                                                          tmp_path):
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setenv("KD_DOWNLOADS", str(tmp_path / "not-a-folder"))
    assert main(["teacher", "r8", "--download"]) == 2
    line = one_line(capsys, f"{world['server'].url}/cifar_teachers.tar (", "FileExistsError",
                    f"take {MEMBER.format('resnet8')} out of the archive and put it at {saved(world, 'r8')}")
    assert "part-" not in line  # the failed cleanup of the part file does not replace the real error
