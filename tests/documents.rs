//! Document tooling in the worker image (issue 15, section 5), against real
//! rootless Podman: a session makes a Word, a PowerPoint, an Excel file and
//! a PDF with the image's libraries, and each one downloads through the file
//! API as what it claims to be (and the PDF reads back). The full profile's
//! tools (LibreOffice, pandoc, ffmpeg, tesseract, Node.js) run in a session,
//! under the same sandbox (seccomp, rlimits, sandbox uid).

mod common;

use common::{Gateway, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_makes_office_files_and_a_pdf_that_download() {
    let gw = Gateway::start(Options::default()).await;
    let answer = gw
        .run(
            "clerk",
            r#"
import docx, pptx, openpyxl, pypdf
from reportlab.pdfgen import canvas
d = docx.Document(); d.add_heading('Report', 0); d.add_paragraph('Hello from docx'); d.save('/sandbox/report.docx')
p = pptx.Presentation(); s = p.slides.add_slide(p.slide_layouts[0]); s.shapes.title.text = 'Deck'; p.save('deck.pptx')
w = openpyxl.Workbook(); w.active['A1'] = 'total'; w.active['B1'] = 42; w.save('sheet.xlsx')
c = canvas.Canvas('doc.pdf'); c.drawString(72, 720, 'Hello from reportlab'); c.save()
print(pypdf.PdfReader('doc.pdf').pages[0].extract_text().strip())
print(openpyxl.load_workbook('sheet.xlsx').active['B1'].value)
print(docx.Document('report.docx').paragraphs[1].text)
"#,
        )
        .await;
    assert_eq!(
        answer["result_text"], "Hello from reportlab\n42\nHello from docx\n",
        "{answer}"
    );
    for (file, magic) in [
        ("report.docx", &b"PK\x03\x04"[..]),
        ("deck.pptx", b"PK\x03\x04"),
        ("sheet.xlsx", b"PK\x03\x04"),
        ("doc.pdf", b"%PDF-"),
    ] {
        let (status, bytes) = gw.get_file("clerk", file).await;
        assert_eq!(status, 200, "{file}");
        assert!(
            bytes.starts_with(magic),
            "{file} starts with {:?}",
            &bytes[..8.min(bytes.len())]
        );
        assert!(bytes.len() > 500, "{file}: {} bytes", bytes.len());
    }
    gw.assert_no_orphans().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_profile_converts_documents_and_media_in_the_sandbox() {
    // Built by scripts/start.sh --profile full (scripts/test.sh does).
    let image = std::env::var("CI_TEST_FULL_IMAGE")
        .unwrap_or_else(|_| "localhost/code-interpreter-worker-full:latest".into());
    let gw = Gateway::start(Options {
        extra: format!("[worker]\nimage = \"{image}\"\n"),
        timeout_secs: 120.0,
        ..Options::default()
    })
    .await;
    let answer = gw
        .run(
            "converter",
            r#"
import subprocess, docx
def run(*cmd):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, (cmd, done.stdout, done.stderr)
    return done.stdout
d = docx.Document(); d.add_paragraph('Converted by LibreOffice'); d.save('letter.docx')
run('soffice', '--headless', '--convert-to', 'pdf', '--outdir', '/sandbox', 'letter.docx')
print(open('letter.pdf', 'rb').read(5))
open('notes.md', 'w').write('# Title\n\nSome *text*.\n')
print(run('pandoc', 'notes.md', '-t', 'html').strip().splitlines()[0])
run('ffmpeg', '-loglevel', 'error', '-f', 'lavfi', '-i', 'sine=frequency=440:duration=1', 'tone.wav')
print(open('tone.wav', 'rb').read(4))
print('eng' in run('tesseract', '--list-langs').split())
print(run('node', '-e', 'process.stdout.write(String(6 * 7))'))
"#,
        )
        .await;
    assert_eq!(
        answer["result_text"], "b'%PDF-'\n<h1 id=\"title\">Title</h1>\nb'RIFF'\nTrue\n42\n",
        "{answer}"
    );
    gw.assert_no_orphans().await;
}
