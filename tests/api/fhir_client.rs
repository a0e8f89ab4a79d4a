//! End to end through a third-party FHIR client: fhir-sdk (its R4B models
//! read the R4 resources used here).

use fhir_sdk::{
    client::{Client, SearchParameters},
    r4b::{
        codes::{AdministrativeGender, ObservationStatus},
        resources::{Observation, Patient},
        types::{CodeableConcept, HumanName, Identifier, Reference},
    },
    version::FhirR4B,
};
use futures::TryStreamExt;

use crate::helpers::spawn_app;

#[tokio::test]
async fn fhir_sdk_client_creates_reads_and_pages_through_a_search() {
    let app = spawn_app().await;
    // The gateway wants a bearer token on every request.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", app.token).parse().unwrap());
    let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
    let client: Client<FhirR4B> = Client::builder().base_url(app.base.parse().unwrap()).client(http).build().unwrap();

    let patient = Patient::builder()
        .identifier(vec![Some(
            Identifier::builder()
                .system("http://electronichealth.se/identifier/personnummer".to_owned())
                .value("191212121212".to_owned())
                .build()
                .unwrap(),
        )])
        .name(vec![Some(HumanName::builder().family("Tolvansson".to_owned()).build().unwrap())])
        .gender(AdministrativeGender::Male)
        .build()
        .unwrap();
    let (patient_id, version) = client.create(&patient).await.unwrap();
    assert_eq!(version.as_deref(), Some("1"));

    let read: Patient = client.read(&patient_id).await.unwrap().expect("patient exists");
    assert_eq!(read.name[0].as_ref().unwrap().family.as_deref(), Some("Tolvansson"));

    for i in 0..7 {
        let obs = Observation::builder()
            .status(ObservationStatus::Final)
            .code(CodeableConcept::builder().text(format!("ADL {i}")).build().unwrap())
            .subject(Reference::builder().reference(format!("Patient/{patient_id}")).build().unwrap())
            .build()
            .unwrap();
        client.create(&obs).await.unwrap();
    }
    let page = client
        .search::<Observation>(
            SearchParameters::empty().and_raw("subject", format!("Patient/{patient_id}")).and_raw("_count", "3"),
        )
        .await
        .unwrap();
    assert!(page.next_page_url().is_some(), "three per page means more pages");
    let all: Vec<Observation> = page.all_matches().try_collect().await.unwrap();
    assert_eq!(all.len(), 7);
}
