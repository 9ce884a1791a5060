//! `/sandbox` is the work directory (issue 15, section 2) and operators'
//! read-only mounts (section 4), against real rootless Podman: code, the
//! file API and `/home/sandbox` all reach the same directory; a mounted host
//! directory is readable, not writable, and its symlinks lead nowhere outside.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;

use common::{Gateway, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_is_the_work_directory_for_code_and_the_file_api() {
    let gw = Gateway::start(Options::default()).await;
    let answer = gw
        .run(
            "writer",
            "import os\nprint(os.getcwd(), os.environ['HOME'])\n\
             open('/sandbox/a.txt', 'w').write('A')\n\
             print(open('/home/sandbox/a.txt').read(), open('a.txt').read())",
        )
        .await;
    assert_eq!(
        answer["result_text"], "/sandbox /sandbox\nA A\n",
        "{answer}"
    );
    // The file API takes a path relative to the work directory, or absolute
    // under either name.
    for path in ["a.txt", "%2Fsandbox%2Fa.txt", "%2Fhome%2Fsandbox%2Fa.txt"] {
        assert_eq!(
            gw.get_file("writer", path).await,
            (200, b"A".to_vec()),
            "GET {path}"
        );
    }
    let (status, _) = gw
        .put_file("writer", "%2Fsandbox%2Fdir%2Fup.txt", b"uploaded".to_vec())
        .await;
    assert_eq!(status, 200);
    let answer = gw
        .run("writer", "print(open('/sandbox/dir/up.txt').read())")
        .await;
    assert_eq!(answer["result_text"], "uploaded\n");
    // Other absolute paths stay refused.
    assert_eq!(gw.get_file("writer", "%2Ftmp%2Fa.txt").await.0, 400);
    gw.assert_no_orphans().await;
}

/// A host directory the service user and any uid can read, removed on drop.
struct HostDir(PathBuf);

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_mount_is_readable_not_writable_and_not_a_way_out() {
    let tag = format!("{:x}", std::process::id());
    let host = HostDir(std::env::temp_dir().join(format!("ci-mount-{tag}")));
    let skills = host.0.join("skills");
    fs::create_dir_all(skills.join("pdf")).unwrap();
    fs::write(skills.join("pdf/SKILL.md"), "# PDF skill\n").unwrap();
    // Outside the mounted directory, on the host: a link to it must not reach it.
    fs::write(host.0.join("secret.txt"), "host secret\n").unwrap();
    symlink(host.0.join("secret.txt"), skills.join("escape")).unwrap();
    symlink("../secret.txt", skills.join("escape-relative")).unwrap();
    for dir in [&host.0, &skills, &skills.join("pdf")] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let gw = Gateway::start(Options {
        extra: format!(
            "[[worker.mounts]]\nsource = \"{}\"\ntarget = \"/mnt/skills\"\n",
            skills.display()
        ),
        ..Options::default()
    })
    .await;
    let answer = gw
        .run(
            "reader",
            r#"
import os
print(open('/mnt/skills/pdf/SKILL.md').read(), end='')
print(sorted(os.listdir('/mnt/skills')))
def attempt(name, action):
    try:
        action()
        print(name, 'ALLOWED')
    except OSError as e:
        print(name, 'refused', e.errno in (1, 13, 30))
attempt('create', lambda: open('/mnt/skills/new.txt', 'w'))
attempt('append', lambda: open('/mnt/skills/pdf/SKILL.md', 'a'))
attempt('remove', lambda: os.remove('/mnt/skills/pdf/SKILL.md'))
attempt('rename', lambda: os.rename('/mnt/skills/pdf', '/mnt/skills/x'))
attempt('chmod', lambda: os.chmod('/mnt/skills/pdf/SKILL.md', 0o777))
attempt('mkdir', lambda: os.mkdir('/mnt/skills/d'))
for link in ('escape', 'escape-relative'):
    try:
        print(link, open('/mnt/skills/' + link).read())
    except OSError as e:
        print(link, 'leads nowhere:', type(e).__name__)
opts = [l.split()[5] for l in open('/proc/self/mountinfo') if l.split()[4] == '/mnt/skills']
print('mount options', opts)
"#,
        )
        .await;
    let text = answer["result_text"].as_str().unwrap();
    assert!(text.starts_with("# PDF skill\n"), "{text}");
    assert!(
        text.contains("['escape', 'escape-relative', 'pdf']"),
        "{text}"
    );
    for action in ["create", "append", "remove", "rename", "chmod", "mkdir"] {
        assert!(
            text.contains(&format!("{action} refused True")),
            "{action}: {text}"
        );
    }
    assert!(
        !text.contains("host secret"),
        "a symlink escaped the mount: {text}"
    );
    assert!(text.contains("escape leads nowhere"), "{text}");
    assert!(text.contains("escape-relative leads nowhere"), "{text}");
    assert!(text.contains("mount options ['ro,"), "{text}");
    // The host directory is untouched.
    assert_eq!(fs::read_dir(&skills).unwrap().count(), 3);
    gw.assert_no_orphans().await;
}

#[test]
fn a_bad_mount_target_stops_the_gateway_with_a_clear_error() {
    let dir = HostDir(std::env::temp_dir().join(format!("ci-badmount-{}", std::process::id())));
    fs::create_dir_all(&dir.0).unwrap();
    let config = dir.0.join("config.toml");
    fs::write(
        &config,
        "[[workers.mounts]]\nsource = \"/srv\"\ntarget = \"/etc/ssl\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
        .args(["--config", config.to_str().unwrap(), "token"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("worker.mounts: target /etc/ssl would cover a directory"),
        "{stderr}"
    );
}
