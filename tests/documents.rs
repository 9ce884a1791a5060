//! Document tooling in the worker image (issue 15, section 5), against real
//! rootless Podman: a session makes a Word, a PowerPoint, an Excel file and
//! a PDF with the image's libraries, and each one downloads through the file
//! API as what it claims to be (and the PDF reads back).

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
        let response = gw
            .http()
            .get(format!("{}/files/{file}?user_uuid=clerk", gw.url))
            .header("X-Auth-Token", &gw.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{file}");
        let bytes = response.bytes().await.unwrap();
        assert!(
            bytes.starts_with(magic),
            "{file} starts with {:?}",
            &bytes[..8.min(bytes.len())]
        );
        assert!(bytes.len() > 500, "{file}: {} bytes", bytes.len());
    }
    gw.assert_no_orphans().await;
}
